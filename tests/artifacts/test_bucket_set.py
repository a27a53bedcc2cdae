"""Bucket sets: chunking, padding, the Polygraphy runner, and the artifact, on hand-made static ONNX
models run by the real onnxruntime (no torch export, so this file takes about a second)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from fxtrt.artifacts.bucket_set import BucketRunner, BucketServer, BucketSet, split_batch
from fxtrt.backend.buckets import output_batch_axes
from fxtrt.backend.graph_inputs import input_metadata
from fxtrt.backend.verify import ReferenceRunner, verify
from fxtrt.compare import Tolerance
from fxtrt.errors import ConfigError, VerificationError
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


def test_split_batch_pads_to_the_smallest_bucket_that_holds_it_and_chunks_only_above() -> None:
    assert split_batch(13, (1, 4, 8, 16)) == [(13, 16)]  # one call: every sample keeps its position
    assert split_batch(16, (1, 4, 8, 16)) == [(16, 16)]
    assert split_batch(40, (1, 4, 8, 16)) == [(16, 16), (16, 16), (8, 8)]  # past the largest bucket
    assert split_batch(37, (1, 4, 8, 16)) == [(16, 16), (16, 16), (5, 8)]
    assert split_batch(3, (4, 8)) == [(3, 4)]  # 3 samples padded to 4
    assert split_batch(11, (4, 8)) == [(8, 8), (3, 4)]
    with pytest.raises(ConfigError, match="1 or more samples"):
        split_batch(0, (1, 4))


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 16, 19])
def test_server_matches_one_big_matmul_at_any_batch(server: BucketServer, n: int) -> None:
    x = RNG.standard_normal((n, 8)).astype(np.float32)
    y, flat = server.run([x])
    np.testing.assert_allclose(y, x @ W, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(flat, (x @ W).reshape(-1), rtol=1e-5, atol=1e-6)


def test_padding_repeats_the_last_sample_and_is_sliced_off(server: BucketServer) -> None:
    assert server.plan(3) == [(3, 4)] and server.describe(3) == "3->4"
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


# --------------------------------------------------------------------------- the artifact

BATCH = DynamicDim("batch", 1, 4, 8, ((0, 0),), 1)


class MatMul(torch.nn.Module):
    """What the bucket models compute, in PyTorch: the reference."""

    def __init__(self, w: np.ndarray = W) -> None:
        super().__init__()
        self.w = torch.from_numpy(w)

    def forward(self, x: torch.Tensor):
        y = x @ self.w
        return y, y.reshape(-1)


def bucket_set(server: BucketServer) -> BucketSet:
    return BucketSet(server, ["x"], ["y", "flat"], BATCH, [], tolerance=Tolerance(1e-5, 1e-4))


def reference(model: torch.nn.Module) -> ReferenceRunner:
    example = torch.from_numpy(RNG.standard_normal((1, 8)).astype(np.float32))
    return ReferenceRunner(model, (example,), (BATCH,), ["x"], ["y", "flat"])


def test_bucket_set_is_verified_as_it_serves_against_the_reference(server: BucketServer) -> None:
    buckets = bucket_set(server)
    rows = verify(buckets, reference(MatMul()), buckets.points, buckets.tolerance)
    assert [r.sizes["batch"] for r in rows if r.output == "y"] == [1, 2, 3, 4, 7, 8, 9]
    notes = {r.sizes["batch"]: r.note for r in rows}
    assert notes[1] == "served as 1->2" and notes[9] == "served as 8+1->2" and notes[8] == "served as 8"
    assert all(r.passed for r in rows)
    buckets.check(rows)


def test_a_bucket_set_that_differs_from_the_reference_fails_its_check(server: BucketServer) -> None:
    buckets = bucket_set(server)
    rows = verify(buckets, reference(MatMul(W + 0.5)), buckets.points, buckets.tolerance)
    assert not any(r.passed for r in rows)
    with pytest.raises(VerificationError, match="does not match"):
        buckets.check(rows)


def test_bucket_set_answers_the_artifact_questions(server: BucketServer, tmp_path: Path) -> None:
    buckets = bucket_set(server)
    assert buckets.buckets == (2, 4, 8) and buckets.primary == server.paths[8]
    assert buckets.serves({"batch": 13}) and not buckets.serves({"batch": 0})
    members = buckets.members()
    assert list(members) == [2, 4, 8]
    assert members[4].serves({"batch": 4}) and not members[4].serves({"batch": 3})
    assert members[4].points == ({"batch": 4},)
    assert buckets.index() == {"onnx": server.paths[8], **{f"onnx_b{b}": server.paths[b] for b in (2, 4, 8)}}
    record = buckets.record()["buckets"]
    assert record["models"] == {"2": "model_b2.onnx", "4": "model_b4.onnx", "8": "model_b8.onnx"}
    assert record["output_batch_axes"] == {"y": 0, "flat": 0} and "padded" in record["serving"]
    moved = buckets.moved_to(tmp_path / "final")
    assert [p.parent for p in moved.files] == [tmp_path / "final"] * 3 and moved.points == buckets.points
    x = RNG.standard_normal((5, 8))  # float64: cast to the float32 the models declare
    y, flat = buckets.run([x])
    assert y.dtype == np.float32 and flat.shape == (20,)
    np.testing.assert_allclose(y, x.astype(np.float32) @ W, rtol=1e-5, atol=1e-6)
    (y4, _) = members[4].run([x[:4]])
    np.testing.assert_allclose(y4, y[:4], rtol=1e-6, atol=1e-6)

