"""A dim declared without a step, on a model that runs only at every 32nd size (timm's DLA, in the
zoo sample): torch's solver cannot generalise the graph (``Eq(-x/32 + ((x/16)//2), 0)``), and
the answer is the model's step, with the line where it fails, not "a size may still be baked in"."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import fxtrt

HERE = Path(__file__)


class Down(torch.nn.Module):
    """DLA's downsampling: a stride-2 conv (ceil(h/2)) plus a max-pooled shortcut (floor(h/2))."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 4, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x) + F.max_pool2d(x, 2)  # LINE: add


class Levels(torch.nn.Module):
    """Five downsamplings: the sizes agree only at multiples of 32."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.downs = torch.nn.ModuleList(Down() for _ in range(5))

    def forward(self, x):
        x = self.stem(x)
        for down in self.downs:
            x = down(x)
        return x.mean((2, 3))


def line_of(marker: str) -> str:
    n = next(i for i, t in enumerate(HERE.read_text().splitlines(), 1) if t.rstrip().endswith(f"# LINE: {marker}"))
    return f"{HERE.name}:{n}"


def test_a_dim_the_model_runs_only_in_steps_of_32_is_refused_with_the_step():
    model = Levels().eval()
    size = ("size", 192, 224, 256)
    with pytest.raises(fxtrt.ConfigError) as info:
        fxtrt.compile(model, torch.randn(1, 3, 224, 224), dynamic={0: {2: size, 3: size}}, verify=False)
    err = info.value
    assert "served only on multiples of 32" in err.message and "size=225" in err.message, err
    assert err.source.endswith(line_of("add")), err
    assert "(192, 224, 256, 32) for 'size'" in err.hint


def test_with_the_step_it_hints_the_model_compiles_and_serves_only_those_sizes(tmp_path):
    torch.manual_seed(0)
    model = Levels().eval()
    size = ("size", 192, 224, 256, 32)
    compiled = fxtrt.compile(model, torch.randn(1, 3, 224, 224), dynamic={0: {2: size, 3: size}},
                             batch=(1, 2, 4), out_dir=tmp_path / "o")
    assert compiled.report.verified
    x = torch.randn(3, 3, 192, 192)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-4, rtol=1e-3)
    with pytest.raises(fxtrt.ConfigError, match="multiple of the claimed step 32"):
        compiled(torch.randn(1, 3, 240, 240))


class FoldBy64(torch.nn.Module):
    """A deferred assert with a modulo by ``h // 64``, which is 0 below 64 (timm mobilevitv2_125 in
    the zoo sample: compile failed with a raw ZeroDivisionError while checking torch's asserts)."""

    def forward(self, x):
        return x.reshape(x.shape[0], -1, x.shape[2] // 64).sum(-1)  # LINE: fold


def test_an_assert_that_divides_by_a_size_of_0_is_a_typed_error_at_the_users_line():
    with pytest.raises(fxtrt.ConfigError) as info:
        fxtrt.compile(FoldBy64().eval(), torch.randn(1, 3, 64, 64), dynamic={0: {2: ("h", 32, 64, 128)}},
                      verify=False)
    assert info.value.source.endswith(line_of("fold")), info.value
    assert "h=32" in info.value.message
    assert "64..128" in info.value.hint, "the range the model runs at, not the one torch's asserts prove (128..128)"
    compiled = fxtrt.compile(FoldBy64().eval(), torch.randn(1, 3, 64, 64), dynamic={0: {2: ("h", 64, 64, 128)}})
    for h in (64, 96, 128):  # the hint's range compiles, verified; and serves what it claims
        x = torch.randn(2, 3, h, 64)
        torch.testing.assert_close(compiled(x), FoldBy64()(x))


def test_a_relation_torchs_solver_cannot_decide_gets_the_step_it_holds_on():
    """timm's anti-aliased ResNets (zoo: seresnextaa101d_32x8d, legacy PASS) run eagerly at every
    size, yet torch's solver gives up on ``Eq(x/32 - ((x/2)//16), 0)``: the hint is the step that
    relation holds on, not "a size may still be baked in"; with that step the model compiles,
    verified, and serves the sizes claimed."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("resnetaa34d", pretrained=False, num_classes=10).eval()  # never called
    size = {2: ("size", 64, 96, 128), 3: ("size", 64, 96, 128)}
    with pytest.raises(fxtrt.GeneralizationError) as info:
        fxtrt.compile(model, torch.randn(1, 3, 96, 96), batch=(1, 2, 2), dynamic={0: size}, verify=False)
    assert "(64, 96, 128, 32) for 'size'" in info.value.hint, info.value
    stepped = {k: (*v, 32) for k, v in size.items()}
    compiled = fxtrt.compile(model, torch.randn(1, 3, 96, 96), batch=(1, 2, 2), dynamic={0: stepped})
    assert compiled.report.verified
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-4, rtol=1e-3)


def test_a_fact_that_fails_with_the_batch_varied_too_still_names_the_step():
    """timm's tresnet (zoo: both baselines PASS at the sizes they were judged at, fxtrt refused with
    a generic hint): its space-to-depth needs multiples of 4, and torch's fact fails at points
    where the batch varies too; the step is found for the size alone."""
    timm = pytest.importorskip("timm")
    from timm.layers.space_to_depth import SpaceToDepth

    model = torch.nn.Sequential(SpaceToDepth(4), torch.nn.Conv2d(48, 8, 1)).eval()
    size = {2: ("size", 32, 48, 64), 3: ("size", 32, 48, 64)}
    with pytest.raises(fxtrt.ConfigError) as info:
        fxtrt.compile(model, torch.randn(1, 3, 48, 48), batch=(1, 2, 8), dynamic={0: size}, verify=False)
    assert info.value.hint == "declare the step: (32, 48, 64, 4) for 'size'", info.value
    compiled = fxtrt.compile(model, torch.randn(1, 3, 48, 48), batch=(1, 2, 8),
                             dynamic={0: {k: (*v, 4) for k, v in size.items()}})
    x = torch.randn(3, 3, 36, 36)
    torch.testing.assert_close(compiled(x), model(x))


def test_the_solvers_step_is_doubled_until_the_model_runs_at_each_multiple():
    """The first relation torch gives up on may hold on multiples of 16 (the order varies between
    runs), while timm's resnetaa34d fails eagerly at 80: the hint is confirmed on the model."""
    timm = pytest.importorskip("timm")
    from fxtrt.errors import GeneralizationError
    from fxtrt.frontend.limits import confirmed_step
    from fxtrt.frontend.program import step_hint
    from fxtrt.settings import DynamicDim

    model = timm.create_model("resnetaa34d", pretrained=False, num_classes=10).eval()
    size = DynamicDim("size", 64, 96, 128, ((0, 2), (0, 3)), 96)
    error = GeneralizationError("the solver gave up", hint=step_hint(size, 16))
    error.solver_step = (size, 16)
    confirmed = confirmed_step(model, (torch.randn(1, 3, 96, 96),), (size,), error)
    assert confirmed is not None and "(64, 96, 128, 32) for 'size'" in confirmed.hint, confirmed
    error.solver_step = (size, 32)
    assert confirmed_step(model, (torch.randn(1, 3, 96, 96),), (size,), error) is None, "32 stands"
