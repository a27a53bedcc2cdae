"""The weights beside the ONNX graph until it is written: no second copy of them in protobuf.

torch.onnx builds the model in onnx_ir, whose initializers wrap torch's own tensors (and the
optimizer's folded ones). ``ONNXProgram.model_proto`` then copies every weight into protobuf,
and the file write makes one more copy: fxtrt held the weights two and three times where the
dynamo exporter, which writes from onnx_ir, holds them once (resnet50 peak RSS 1.38x of it,
BERT-base 1.86x; issue 19, item 5). Here the large initializers are serialised as stubs (their
name, type, dims and metadata, no data) and kept aside as the onnx_ir tensors they were.
Every step between emission and the file (opset conversion, cleanup, the dim checks) works on
the graph alone; a step that must read a weight (onnxsim folding a Gather of constants)
materialises just that one, and :func:`fxtrt.backend.stream_write.write_model` writes each stub
as the tensor it stands for, one at a time, byte for byte as ``model_proto`` would have held it.

Example::

    weights = Weights()
    proto = serialize_aside(program.model, weights)   # proto.graph.initializer: stubs for big ones
    weights.materialize(proto, {"gather_table"})      # that one is real again
    write_model(proto, path, weights)                 # the same bytes as the real model's
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Collection

import onnx

from fxtrt.backend.protowire import field_key, field_key_size, split_fields
from fxtrt.backend.shape_inference import WEIGHT_ELEMENTS  # the same line between a weight and a constant

log = logging.getLogger(__name__)

_RAW_DATA = onnx.TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number
_RAW = frozenset({  # types whose tensors onnx_ir writes as raw_data, little-endian, unpacked
    onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE,
    onnx.TensorProto.INT8, onnx.TensorProto.INT16, onnx.TensorProto.INT32, onnx.TensorProto.INT64,
    onnx.TensorProto.UINT8, onnx.TensorProto.UINT16, onnx.TensorProto.UINT32, onnx.TensorProto.UINT64,
    onnx.TensorProto.BOOL,
})


@dataclass
class Weights:
    """The onnx_ir tensors of the stubs in a model's main graph, by initializer name."""

    tensors: dict[str, Any] = field(default_factory=dict)

    def __contains__(self, name: object) -> bool:
        return name in self.tensors

    def __len__(self) -> int:
        return len(self.tensors)

    def stub_size(self, stub: onnx.TensorProto) -> int:
        """The bytes the real tensor of ``stub`` serialises to."""
        n = self.tensors[stub.name].nbytes
        return stub.ByteSize() + field_key_size(_RAW_DATA, n) + n

    def write(self, f: BinaryIO, stub: onnx.TensorProto) -> None:
        """The real tensor of ``stub``, serialised: its fields around ``raw_data``, which comes
        from the tensor's own memory (``tofile``: onnx_ir's, and torch.onnx's for torch tensors)."""
        low, high = split_fields(stub, _RAW_DATA, onnx.TensorProto)
        tensor = self.tensors[stub.name]
        f.write(low)
        f.write(field_key(_RAW_DATA, tensor.nbytes))
        f.flush()  # tofile may write through the file descriptor, past Python's buffer
        tensor.tofile(f)  # from the tensor's memory (torch's or numpy's): no bytes copy of it
        f.write(high)

    def materialize(self, model: onnx.ModelProto, names: Collection[str] | None = None) -> None:
        """Make the stubs of ``names`` (default: every one) real tensors in ``model``, in place."""
        for tensor in model.graph.initializer:
            if tensor.name in self.tensors and (names is None or tensor.name in names):
                tensor.raw_data = self.tensors.pop(tensor.name).tobytes()


def serialize_aside(ir_model: Any, weights: Weights) -> onnx.ModelProto:
    """``ir_model`` as protobuf with its large main-graph initializers as stubs, their tensors
    put in ``weights``. ``ir_model`` is left as it was."""
    import onnx_ir as ir

    aside = {}
    for value in ir_model.graph.initializers.values():
        tensor = value.const_value
        if tensor is None or isinstance(tensor, (ir.ExternalTensor, ir.StringTensor, ir.TensorProtoTensor)):
            continue
        if tensor.size > WEIGHT_ELEMENTS and tensor.dtype.value in _RAW:
            aside[value.name] = (value, tensor)
    try:
        for name, (value, tensor) in aside.items():
            value.const_value = ir.ExternalTensor(
                "", None, None, tensor.dtype, shape=tensor.shape, name=tensor.name or name,
                doc_string=tensor.doc_string, metadata_props=dict(tensor.metadata_props) or None)
        proto = ir.serde.serialize_model(ir_model)
    finally:
        for value, tensor in aside.values():
            value.const_value = tensor
    for stub in proto.graph.initializer:
        if stub.name in aside:
            stub.ClearField("data_location")
            del stub.external_data[:]
            weights.tensors[stub.name] = aside[stub.name][1]
    log.debug("%d weights kept aside of the protobuf model", len(aside))
    return proto
