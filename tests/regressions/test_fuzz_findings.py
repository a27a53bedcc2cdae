"""Bugs the hazard generator (``python -m benchmarks.fuzz``) found, each as its shrunk model.

Every test here failed on the code before its fix (commit 1e3f4dd), which refused or
mis-verified the model; the docstring names the generated model it came from.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fxtrt


def _compile(model, x, tmp_path, **options):
    return fxtrt.compile(model.eval(), x, out_dir=tmp_path / "out", **options)


def _check(compiled, model, *shapes):
    for shape in shapes:
        x = torch.randn(*shape)
        with torch.no_grad():
            torch.testing.assert_close(torch.as_tensor(compiled(x)), model(x), atol=1e-4, rtol=1e-3)


def window_mean(x):
    """The fuzzer's floordiv_window#0: pad H and W to a multiple of 4, add each 4x4 window's mean."""
    b, c, h, w = x.shape
    ph, pw = (-h) % 4, (-w) % 4
    y = F.pad(x, (0, pw, 0, ph))
    y = y.reshape(b, c, (h + ph) // 4, 4, (w + pw) // 4, 4).mean((3, 5), keepdim=True)
    return x + y.expand(-1, -1, -1, 4, -1, 4).reshape(b, c, h + ph, w + pw)[:, :, :h, :w]


class CropOfUpsampledPool(torch.nn.Module):
    """seed 0, model 6 (floordiv_window#1, img, H=W dynamic): torch assumes the crop ``[:h]`` of a
    2*ceil(h/2) long tensor is not a no-op, which fails at every even h. Before: a ConfigError
    "holds only where Ne(...)" for a model that is right at every size."""

    def forward(self, x):
        up = F.avg_pool2d(x, 2, ceil_mode=True).repeat_interleave(2, 2).repeat_interleave(2, 3)
        return x + up[:, :, : x.size(2), : x.size(3)]


def test_an_assumption_torch_cannot_keep_is_verified_where_it_fails_not_refused(tmp_path):
    r = ("hw", 9, 11, 33)
    model = CropOfUpsampledPool()
    compiled = _compile(model, torch.randn(2, 4, 11, 11), tmp_path, batch=(2, 8, 12), dynamic={0: {2: r, 3: r}})
    assert {p.sizes["hw"] for p in compiled.report.verification if p.sizes["hw"] % 2 == 0}, "even sizes verified"
    _check(compiled, model, (3, 4, 10, 10), (5, 4, 32, 32), (2, 4, 17, 17))


class PadToMultipleOfFour(torch.nn.Module):
    """seed 0, model 4 (floordiv_window#0 + arange_full#3, seq 8..12): torch.export's solver
    crashes writing its suggested fixes ("Cannot create Dim with inconsistent min=3, max=3").
    Before: a CaptureError quoting torch's assertion."""

    def forward(self, x):
        s = x.size(1)
        y = F.pad(x, (0, 0, 0, (4 - s % 4) % 4))
        y = y.reshape(y.size(0), -1, 4, 8).mean(2, keepdim=True).expand(-1, -1, 4, -1).reshape(y.size(0), -1, 8)
        return x + y[:, :s]


def test_a_crash_in_torchs_constraint_solver_is_captured_over_wider_ranges(tmp_path):
    model = PadToMultipleOfFour()
    compiled = _compile(model, torch.randn(2, 10, 8), tmp_path, batch=(1, 1, 4), dynamic={0: {1: ("seq", 8, 10, 12)}})
    assert any("constraint solver failed" in n for n in compiled.report.notes)
    _check(compiled, model, (3, 9, 8), (4, 11, 8), (1, 12, 8))


class PoolThenUpsample1d(torch.nn.Module):
    """seed 0, model 2 (flatten_unflatten#0 + conv_pool + floordiv_window#1, seq 8..12 with opt
    12): three bugs in a row. ``max_pool1d`` makes torch bake the length, and the grid
    gcd(8, 12, 12) = 4 held only 8 and 12, too few to fit (a GeneralizationError); at even
    lengths torch then writes the crop ``[:, :s]`` as ``alias``, at odd ones as a slice (a
    StructureError); and the generalised graph could not be re-exported, since ``max_pool1d``
    bakes the length again."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv1d(8, 8, 3, padding=1)

    def forward(self, x):
        y = F.max_pool1d(self.conv(x.transpose(1, 2)), 2, ceil_mode=True)
        x = x + F.interpolate(y, size=x.size(1)).transpose(1, 2)
        return x + x[:, ::2].repeat_interleave(2, 1)[:, : x.size(1)]


def test_a_length_baked_by_max_pool1d_is_generalised_on_a_coarse_grid(tmp_path):
    model = PoolThenUpsample1d()
    compiled = _compile(model, torch.randn(2, 12, 8), tmp_path, batch=None, dynamic={0: {1: ("seq", 8, 12, 12)}})
    assert compiled.report.stages["capture"]["dims"]["seq"]["how"] == "generalised by trace diff"
    assert any(p.name == "max_pool_1d_as_2d" and p.changes for p in compiled.report.passes)
    _check(compiled, model, (2, 9, 8), (2, 11, 8), (2, 8, 8))


class LoopMinusBatchMean(torch.nn.Module):
    """Found writing the fuzzer's property: a per-sample loop (so a bucket set) and a statistic
    over the batch. Verification tiled a batch-1 example, so every sample was the same and the
    padding rows could not change the mean: compile passed, and served wrong values at 3 (as
    3->4). Now the copies differ and compile refuses, naming the padding."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, x):
        return torch.stack([self.fc(s) for s in x]) - x.mean(0)


def test_samples_that_interact_are_seen_by_verification(tmp_path):
    with pytest.raises(fxtrt.VerificationError) as info:
        _compile(LoopMinusBatchMean(), torch.randn(1, 8), tmp_path, batch=(1, 4, 8))
    message = str(info.value)
    assert "exactly a bucket (1, 4, 8)" in message and "not independent" in message and "3 as 3->4" in message
    assert "pass" not in message.replace("padded", "") and "debug_dir" not in (info.value.hint or "")
    assert not (tmp_path / "out").exists()


def test_a_solver_crash_at_an_even_trace_size_is_captured_at_the_next_size(tmp_path):
    """seed 0, model 87 (floordiv_window#1 with conv_pool#0 and others, H=W 12..25 traced at 12):
    at an even trace size the crop is a no-op and torch's solver fails ("Expected an equality
    constraint for s0, got (12 <= s0) & (s0 <= 25)"), over wider ranges too. Before: a
    CaptureError. Now it is captured at 13, where torch keeps the dim symbolic."""
    r = ("hw", 12, 12, 25)
    model = CropOfUpsampledPool()
    compiled = _compile(model, torch.randn(1, 4, 12, 12), tmp_path, batch=(1, 3, 8), dynamic={0: {2: r, 3: r}})
    assert compiled.report.stages["capture"]["dims"]["hw"]["how"] == "symbolic from capture"
    _check(compiled, model, (2, 4, 12, 12), (5, 4, 19, 19), (1, 4, 24, 24))


class WindowThenCrop(torch.nn.Module):
    """seed 0, model 89 (floordiv_window#0 then #1, H=W 12..25): a window partition padded to a
    multiple of 4, then the crop of an upsampled pool. torch's solver fails at every trace size
    and over wider ranges ("Expected an equality constraint"); before: a CaptureError, then, with
    the first fixes, a StructureError from trace diffing. Now it is captured with Dim.DYNAMIC and
    the ranges are read back from the graph."""

    def forward(self, x):
        return CropOfUpsampledPool()(window_mean(x))


def test_a_solver_that_fails_everywhere_is_bypassed_with_dim_dynamic(tmp_path):
    r = ("hw", 12, 12, 25)
    model = WindowThenCrop()
    compiled = _compile(model, torch.randn(1, 4, 12, 12), tmp_path, batch=(1, 3, 8), dynamic={0: {2: r, 3: r}})
    assert any("Dim.DYNAMIC" in n for n in compiled.report.notes)
    _check(compiled, model, (2, 4, 13, 13), (7, 4, 24, 24), (1, 4, 16, 16), (3, 4, 25, 25))


class BakedBatch(torch.nn.Module):
    """seed 0, models 20, 396 (baked_size#0, batch 1..4, example batch 2): the batch is baked by
    ``int(x.size(0))``, and the trace sizes for the fit skipped the example's own size, leaving
    3 and 4. Before: a GeneralizationError "too few sizes to fit"."""

    def forward(self, x):
        n = int(x.size(0))
        return torch.tanh(x.reshape(n, -1)).reshape(x.shape)


def test_a_narrow_batch_range_still_fits_a_baked_batch(tmp_path):
    model = BakedBatch()
    compiled = _compile(model, torch.randn(2, 4, 6, 6), tmp_path, batch=(1, 2, 4))
    assert compiled.buckets is None
    _check(compiled, model, (1, 4, 6, 6), (3, 4, 6, 6), (4, 4, 6, 6))


def test_a_dim_specialised_at_its_trace_size_is_traced_at_another_first(tmp_path):
    """seed 0, model 222 (floordiv_window#0, seq 4..13 traced at 4): at 4 the pad to a multiple
    of 4 is 0 and torch specialises seq to 4; traced by diffing, the pad is not affine in seq.
    Before: a GeneralizationError. Now the capture is tried at 5 first, where torch keeps seq."""
    model = PadToMultipleOfFour()
    compiled = _compile(model, torch.randn(2, 4, 8), tmp_path, batch=None, dynamic={0: {1: ("seq", 4, 4, 13)}})
    assert compiled.report.stages["capture"]["dims"]["seq"]["how"] == "symbolic from capture"
    _check(compiled, model, (2, 5, 8), (2, 8, 8), (2, 13, 8), (2, 6, 8))


class WindowMeanThenPerSample(torch.nn.Module):
    """seed 0, models m0115 and m0116 (floordiv_window#0 + per_sample_loop#0, img, batch and H, W
    independent): torch's constraint solver fails with H and W symbolic ("Cannot create Dim with
    inconsistent min=-1, max=-5"), and the per-sample loop specialises the batch, so the
    Dim.DYNAMIC capture could not read the batch back. Before: a SolverFailure refusal. Now the
    batch is baked (a bucket set: the loop follows it) and H, W are captured with Dim.DYNAMIC."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return torch.stack([self.conv(s[None])[0] for s in window_mean(x)])


def test_a_solver_failure_with_a_batch_the_model_specialises_is_captured(tmp_path):
    torch.manual_seed(0)
    model = WindowMeanThenPerSample().eval()
    side = (8, 8, 21)
    compiled = _compile(model, torch.randn(1, 4, 8, 8), tmp_path, batch=(2, 2, 7), dynamic={0: {2: side, 3: side}})
    assert compiled.report.stages["buckets"]["automatic"]
    _check(compiled, model, (2, 4, 8, 9), (3, 4, 21, 13), (7, 4, 10, 21), (1, 4, 17, 8))
