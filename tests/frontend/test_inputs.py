import torch

from fxtrt.frontend.inputs import capture_sizes, inputs_at, resize_dim, verification_sizes
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


def test_capture_sizes_avoid_zero_one_and_the_example_batch():
    assert capture_sizes(dim(example=1)) == (2, 3)
    assert capture_sizes(dim(example=2)) == (3, 4)
    assert capture_sizes(dim(example=3)) == (2, 4)
    assert capture_sizes(DynamicDim("T", 20, 50, 100, ((0, 1),), 30)) == (30, 31)


def test_verification_sizes_are_min_opt_max_and_an_odd_size():
    assert verification_sizes(dim()) == [1, 3, 8, 32]
    assert verification_sizes(dim(lo=2, opt=4, hi=16)) == [2, 3, 4, 16]
    assert verification_sizes(dim(lo=4, opt=4, hi=4)) == [4]
