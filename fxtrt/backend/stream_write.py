"""Write an ONNX model to a file one weight at a time: the bytes of ``SerializeToString()``,
without holding them all.

``path.write_bytes(model.SerializeToString())`` holds the model twice more while it writes (the
serialised bytes, and protobuf's buffer before it becomes them): on resnet50 a 200 MB rise at
the end of compile, the largest of its peak (issue 19, item 5). Protobuf writes a message's
fields in field-number order, so the model is written as the same bytes in three kinds of
pieces: the fields before the graph, the graph (its fields before the initializers, each
initializer on its own, its fields after), the fields after. Only one weight's bytes are ever
held at once.

Example::

    write_model(model, path)   # path.read_bytes() == model.SerializeToString()
"""
from __future__ import annotations

from pathlib import Path

import onnx

from fxtrt.backend.protowire import field_key, field_key_size, split_fields
from fxtrt.backend.weights import Weights

_GRAPH = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number
_INITIALIZER = onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number
PROTOBUF_MAX = 2**31 - 1  # what protobuf parses in one message


def write_model(model: onnx.ModelProto, path: Path, weights: Weights | None = None) -> None:
    """``model`` to ``path``, byte for byte as ``model.SerializeToString()`` would give it;
    ValueError, before writing anything, for a model protobuf could not parse back. An initializer
    that is a stub of ``weights`` is written as the tensor it stands for."""
    weights = weights if weights is not None else Weights()
    before, after = split_fields(model, _GRAPH, onnx.ModelProto)
    graph_before, graph_after = split_fields(model.graph, _INITIALIZER, onnx.GraphProto)
    sizes = [weights.stub_size(t) if t.name in weights else t.ByteSize() for t in model.graph.initializer]
    graph_size = len(graph_before) + len(graph_after) + sum(field_key_size(_INITIALIZER, n) + n for n in sizes)
    if len(before) + field_key_size(_GRAPH, graph_size) + graph_size + len(after) > PROTOBUF_MAX:
        raise ValueError(f"the model is over protobuf's 2 GB ({graph_size} bytes of graph): no reader would parse it")
    with open(path, "wb") as f:
        f.write(before)
        if model.HasField("graph"):
            f.write(field_key(_GRAPH, graph_size))
            f.write(graph_before)
            for tensor, size in zip(model.graph.initializer, sizes):
                f.write(field_key(_INITIALIZER, size))
                if tensor.name in weights:
                    weights.write(f, tensor)
                else:
                    f.write(tensor.SerializeToString())
            f.write(graph_after)
        f.write(after)
