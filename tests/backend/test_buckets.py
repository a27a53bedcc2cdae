"""The rules of a bucket set: which buckets, which sizes it is checked at, which output axis
carries the batch, and the automatic fallback (pure functions; no model is run)."""
from __future__ import annotations

import pytest

from fxtrt.backend.buckets import default_buckets, fallback, output_batch_axes
from fxtrt.sizes import bucket_points, bucket_verification_sizes
from fxtrt.errors import StructureError
from fxtrt.settings import DynamicDim


def test_default_buckets_rule() -> None:
    assert default_buckets(1, 8, 32) == (1, 4, 8, 16, 32)
    assert default_buckets(2, 6, 20) == (2, 4, 6, 8, 16, 20)
    assert default_buckets(1, 1, 1) == (1,)
    assert default_buckets(1, 8, 64) == (1, 4, 8, 16, 32, 64)


def test_verification_sizes_cover_buckets_gaps_padding_and_past_the_largest() -> None:
    assert bucket_verification_sizes((1, 4, 8, 16)) == [1, 3, 4, 7, 8, 13, 16, 17]
    assert bucket_verification_sizes((4, 8)) == [1, 4, 7, 8, 9]
    dim = DynamicDim("T", 20, 50, 100, ((0, 1),), 30)
    points = bucket_points([1, 3, 4], [dim])
    assert points[:3] == [{"batch": 1, "T": 50}, {"batch": 3, "T": 50}, {"batch": 4, "T": 50}]
    assert {"batch": 4, "T": 100} in points and {"batch": 1, "T": 20} in points


def test_output_batch_axes_from_the_bucket_shapes() -> None:
    shapes = {1: [[1, 10], [5, 1, 8], [3], [4]], 4: [[4, 10], [5, 4, 8], [3], [16]]}
    # [b, 10] -> 0; seq-first [T, b, 8] -> 1; [3] has no batch; [4b] is a batch-major flatten.
    assert output_batch_axes(shapes) == (0, 1, None, 0)
    assert output_batch_axes({4: [[4, 10], [10, 4], [3]]}) == (0, 1, None)  # one bucket: first axis of that size


def test_output_batch_axes_whose_size_also_follows_another_dynamic_dim() -> None:
    """hf pixtral: every image's patches in one sequence, ``b * (size//16)**2`` in bucket ``b``
    (zoo: at batch 3 the set returned bucket 4's 16 patches per image, silently)."""
    shapes = {b: [[1, f"{b}*((size//16))**2" if b > 1 else "((size//16))**2", 64], ["size", 7], [b, "seq"]]
              for b in (1, 4, 8)}
    assert output_batch_axes(shapes) == (1, None, 0)


def test_fallback_picks_the_default_buckets_and_says_why() -> None:
    batch = DynamicDim("batch", 1, 8, 32, ((0, 0),), 1)
    exc = StructureError("the graph's structure depends on the size of 'batch'", node="getitem", source="m.py:3")
    buckets, stage, note = fallback(batch, exc)
    assert buckets == (1, 4, 8, 16, 32)
    assert stage["automatic"] is True and stage["buckets"] == [1, 4, 8, 16, 32] and stage["source"] == "m.py:3"
    assert stage["why"].startswith("the batch can't be dynamic: the graph's structure")
    assert "[1, 4, 8, 16, 32]" in note
    with pytest.raises(KeyError):
        stage["models"]  # the bucket set adds those once its models exist
