"""Bucket sets: chunking, padding, output axes and the Polygraphy runner, on hand-made static ONNX
models run by the real onnxruntime (no torch export, so this file takes about a second)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fxtrt.backend.buckets import (
    BucketRunner,
    BucketServer,
    bucket_points,
    bucket_verification_sizes,
    default_buckets,
    input_metadata,
    output_batch_axes,
    split_batch,
)
from fxtrt.errors import ConfigError
from fxtrt.settings import DynamicDim

RNG = np.random.default_rng(0)
W = RNG.standard_normal((8, 4)).astype(np.float32)


def _static(path: Path, b: int) -> Path:
    """x: [b, 8] -> y = x @ W: [b, 4], and flat = reshape(y, [b*4]) (a batch-major flatten)."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"]),
         helper.make_node("Reshape", ["y", "shape"], ["flat"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [b, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [b, 4]),
         helper.make_tensor_value_info("flat", TensorProto.FLOAT, [b * 4])],
        [numpy_helper.from_array(W, "w"), numpy_helper.from_array(np.array([b * 4], np.int64), "shape")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture
def server(tmp_path: Path) -> BucketServer:
    paths = {b: _static(tmp_path / f"model_b{b}.onnx", b) for b in (2, 4, 8)}
    shapes = {b: [[b, 4], [b * 4]] for b in paths}
    return BucketServer(paths, [(0, 0)], output_batch_axes(shapes))


def test_split_batch_takes_the_largest_bucket_that_fits_then_pads() -> None:
    assert split_batch(13, (1, 4, 8, 16)) == [(8, 8), (4, 4), (1, 1)]
    assert split_batch(16, (1, 4, 8, 16)) == [(16, 16)]
    assert split_batch(40, (1, 4, 8, 16)) == [(16, 16), (16, 16), (8, 8)]  # past the largest bucket
    assert split_batch(3, (4, 8)) == [(3, 4)]  # 3 samples padded to 4
    assert split_batch(11, (4, 8)) == [(8, 8), (3, 4)]
    with pytest.raises(ConfigError, match="1 or more samples"):
        split_batch(0, (1, 4))


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


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 16, 19])
def test_server_matches_one_big_matmul_at_any_batch(server: BucketServer, n: int) -> None:
    x = RNG.standard_normal((n, 8)).astype(np.float32)
    y, flat = server.run([x])
    np.testing.assert_allclose(y, x @ W, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(flat, (x @ W).reshape(-1), rtol=1e-5, atol=1e-6)


def test_padding_repeats_the_last_sample_and_is_sliced_off(server: BucketServer) -> None:
    assert server.plan(3) == [(2, 2), (1, 2)] and server.describe(3) == "2+1->2"
    x = RNG.standard_normal((1, 8)).astype(np.float32)
    (y, flat) = server.run([x])
    assert y.shape == (1, 4) and flat.shape == (4,)


def test_inputs_that_disagree_on_the_batch_are_an_error(tmp_path: Path) -> None:
    paths = {2: _static(tmp_path / "m.onnx", 2)}
    two_inputs = BucketServer(paths, [(0, 0), (1, 0)], (0, 0))
    with pytest.raises(ConfigError, match="disagree on the batch size"):
        two_inputs.batch_size([np.zeros((3, 8)), np.zeros((4, 8))])


def test_runner_drives_the_server_under_polygraphy_comparator(server: BucketServer) -> None:
    from polygraphy.comparator import Comparator

    meta = input_metadata(server.paths[8], [(0, 0)])
    assert list(meta["x"].shape) == [None, 8]
    runner = BucketRunner(server, ["x"], ["y", "flat"], meta)
    feeds = [{"x": RNG.standard_normal((n, 8)).astype(np.float32)} for n in (3, 9)]
    results = Comparator.run([runner], data_loader=feeds)
    ((name, iterations),) = results
    assert name.startswith("buckets")
    for feed, out in zip(feeds, iterations):
        np.testing.assert_allclose(out["y"], feed["x"] @ W, rtol=1e-5, atol=1e-6)
