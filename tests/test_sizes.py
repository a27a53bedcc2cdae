import numpy as np
import torch

from fxtrt.sizes import diff_sizes, grid_sizes, inputs_at, resize_dim, symbolic_size, verification_sizes
from fxtrt.settings import DynamicDim


def dim(name="batch", lo=1, opt=8, hi=32, example=1):
    return DynamicDim(name, lo, opt, hi, ((0, 0),), example)


def test_tiling_keeps_the_example_values():
    ids = torch.tensor([[5, 7, 9]])
    assert resize_dim(ids, 0, 3).tolist() == [[5, 7, 9]] * 3
    assert resize_dim(ids, 1, 5).tolist() == [[5, 7, 9, 5, 7]]
    assert resize_dim(ids, 1, 2).tolist() == [[5, 7]]


def test_inputs_at_resizes_every_site_of_a_dim():
    d = DynamicDim("T", 2, 4, 8, ((0, 1), (1, 2)), 3)
    x, m = inputs_at((torch.randn(1, 3, 4), torch.ones(1, 1, 3)), [d], {"T": 7})
    assert x.shape == (1, 7, 4) and m.shape == (1, 1, 7)


def test_symbolic_capture_traces_at_two_or_more_on_the_grid():
    assert symbolic_size(dim(example=1)) == 2, "never 0 or 1, which torch.export specialises"
    assert symbolic_size(dim(example=5)) == 5
    assert symbolic_size(DynamicDim("h", 320, 480, 640, ((0, 2),), 300, 32)) == 320, "300 is off the grid"
    assert symbolic_size(DynamicDim("h", 320, 480, 640, ((0, 2),), 416, 32)) == 416
    assert symbolic_size(dim(lo=1, opt=1, hi=1)) is None


def test_diff_sizes_avoid_zero_one_and_the_example_batch():
    assert diff_sizes(dim(example=1)) == [2, 3, 4]
    assert diff_sizes(dim(example=2)) == [3, 4, 5]
    assert diff_sizes(dim(example=3)) == [2, 4, 5]
    assert diff_sizes(DynamicDim("T", 20, 50, 100, ((0, 1),), 30)) == [20, 30, 40], "multiples of gcd(20, 50, 100)"
    assert diff_sizes(dim(lo=1, opt=2, hi=3)) == [2, 3], "never past max"


def test_grid_is_the_step_or_the_gcd_of_the_range():
    assert list(grid_sizes(DynamicDim("h", 320, 480, 640, ((0, 2),), 320, 32))) == list(range(320, 641, 32))
    assert list(grid_sizes(DynamicDim("h", 64, 128, 192, ((0, 2),), 128))) == [64, 128, 192]


def test_verification_sizes_are_min_opt_max_and_one_in_between_on_the_grid():
    assert verification_sizes(dim()) == [1, 3, 8, 32]
    assert verification_sizes(dim(lo=2, opt=4, hi=16)) == [2, 4, 6, 16], "multiples of gcd(2, 4, 16)"
    assert verification_sizes(dim(lo=4, opt=4, hi=4)) == [4]
    assert verification_sizes(DynamicDim("h", 320, 480, 640, ((0, 2),), 320, 32)) == [320, 352, 480, 640]
    assert verification_sizes(DynamicDim("h", 64, 128, 192, ((0, 2),), 128)) == [64, 128, 192]


def test_the_noise_stream_gives_torch_randn_in_any_order_of_requests():
    """One draw serves every size of a verification, with the values a draw per size gave
    (visformer-like models pass or fail by them) wherever numel is a multiple of 16."""
    from fxtrt.sizes import Noise

    def randn(shape):
        return torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    shapes = [(2, 3, 64, 64), (32, 3, 64, 64), (3, 3, 40, 56), (1, 16)]
    noise = Noise()
    for shape in shapes + shapes[::-1]:
        assert torch.equal(noise.take(shape), randn(shape)), shape
    odd = Noise().take((3, 5))
    assert torch.equal(odd, Noise().take((32, 3, 64, 64)).flatten()[:15].view(3, 5)), "history-independent"


def test_feeds_for_a_verification_are_the_inputs_at_each_point():
    from fxtrt.compare import feeds_at

    example = (torch.randn(2, 3, 8, 8), torch.randint(0, 9, (2, 4)))
    dims = [DynamicDim("batch", 1, 2, 32, ((0, 0), (1, 0)), 2), DynamicDim("h", 8, 8, 16, ((0, 2),), 8)]
    points = [{"batch": 1, "h": 8}, {"batch": 32, "h": 16}, {"batch": 3, "h": 16}, {"batch": 8, "h": 8}]
    feeds = feeds_at(example, dims, ["x", "ids"], points)
    assert [p for p, _ in feeds] == points
    for point, feed in feeds:
        x, ids = inputs_at(example, dims, point)
        assert np.array_equal(feed["x"], x.numpy()) and np.array_equal(feed["ids"], ids.numpy()), point


def test_the_batch_copies_are_nudged_in_steps_to_the_same_values_as_in_one_pass():
    """On dim 0 the nudging runs in cache-sized steps, in place; every element is still
    ``float32(noise * scale + x)`` computed in float64, as the one-pass form gives it."""
    from fxtrt import sizes

    example = torch.randn(2, 3, 70, 90)
    tiled = example.repeat(13, 1, 1, 1).narrow(0, 0, 25).contiguous()
    assert tiled.numel() > 3 * sizes._STEP
    noise = sizes.Noise()
    spread = float(example.double().std())
    want = noise.take(tiled.shape).mul(0.05 * spread)
    want.narrow(0, 0, 2).zero_()
    want = want.add_(tiled).to(torch.float32)
    got = sizes.vary_copies(tiled.clone(), 0, 2, noise)
    assert torch.equal(got, want)
    assert torch.equal(got[:2], example), "the example's own samples are untouched"
