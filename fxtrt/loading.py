"""Reopen a compiled out_dir and serve it: no recompiling, no torch model, claims enforced.

A directory is data, not code: ``report.json`` (JSON) says what it serves and the ONNX files do
it; nothing is unpickled, only plain file names inside the directory are opened, and an ONNX
external-data location that leads outside it is refused.

Example::

    compiled = fxtrt.compile(model, x, out_dir="out")
    compiled.save("deploy/resnet")          # or use "out" as it is
    served = fxtrt.load("deploy/resnet")    # a CompiledModel
    served(torch.randn(4, 3, 224, 224))     # a ConfigError outside what was claimed
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch.utils._pytree as pytree

from fxtrt.artifacts.base import Artifact
from fxtrt.artifacts.bucket_set import BucketServer, BucketSet
from fxtrt.artifacts.claims import Claims
from fxtrt.artifacts.onnx_model import OnnxModel
from fxtrt.artifacts.staging import REPORT_FILE
from fxtrt.compare import Tolerance
from fxtrt.errors import ConfigError
from fxtrt.settings import BATCH_NAME, DynamicDim

SERVING = "serving"


def serving_record(artifact: Artifact, claims: Claims, output_names: tuple[str, ...], out_spec: Any) -> dict[str, Any]:
    """``report.stages["serving"]``: what :func:`load` needs to serve the directory again."""
    try:
        spec = pytree.treespec_dumps(out_spec) if out_spec is not None else None
    except Exception:  # a structure pytree cannot write as JSON: a loaded model returns a flat tuple
        spec = None
    record: dict[str, Any] = {"claims": claims.to_dict(), "outputs": list(output_names), "out_spec": spec}
    served = getattr(artifact, "half", artifact)  # an fp16 model serves as its fp16 files do
    if isinstance(served, BucketSet):
        record["buckets"] = {"models": {str(b): p.name for b, p in served.server.paths.items()},
                             "output_batch_axes": list(served.server.output_axes),
                             "no_chunks": served.server.no_chunks}
    else:
        record["model"] = served.primary.name
    return record


@dataclass(frozen=True)
class _Served:
    """The input and output structure of a loaded model (what compile's capture knew)."""

    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    out_spec: Any
    example: tuple = ()


def load(path: str | os.PathLike) -> Any:
    """The :class:`~fxtrt.CompiledModel` an out_dir holds, serving exactly what it claims."""
    from fxtrt.compiled_model import CompiledModel
    from fxtrt.report import Report
    from fxtrt.settings import Settings

    directory = Path(path).expanduser().resolve()
    report_path = directory / REPORT_FILE
    if not report_path.is_file():
        raise ConfigError(f"{directory} holds no {REPORT_FILE}: it is not a directory fxtrt.compile wrote")
    try:
        data = json.loads(report_path.read_text())
        record = data["stages"][SERVING]
        claims = Claims.from_dict(record["claims"])
        outputs = tuple(str(n) for n in record["outputs"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{report_path} does not say what the directory serves ({type(exc).__name__}: {exc})",
                          hint="compile again with this version of fxtrt") from None
    given = data.get("settings", {})
    tolerance = Tolerance(float(given.get("atol", Settings.atol)), float(given.get("rtol", Settings.rtol)))
    dims = tuple(DynamicDim(d.name, d.min, d.opt or d.min, d.max if d.max is not None else d.min, d.sites,
                            d.opt or d.min, d.step) for d in claims.dims)
    artifact = _artifact(directory, record, claims, outputs, dims, tolerance)
    try:
        out_spec = pytree.treespec_loads(record["out_spec"]) if record.get("out_spec") else None
    except Exception:  # a type this process has not registered (its library is not imported): flat outputs
        out_spec = None
    if out_spec is not None and out_spec.num_leaves != len(outputs):
        out_spec = None
    if out_spec is None:
        out_spec = pytree.tree_flatten(tuple(range(len(outputs))))[1] if len(outputs) != 1 else pytree.LeafSpec()
    settings = Settings(dims=dims, input_names=claims.input_names, atol=tolerance.atol, rtol=tolerance.rtol,
                        out_dir=directory)
    report = Report(model=str(data.get("model", "")), settings=data.get("settings", {}), notes=list(data.get("notes", [])),
                    stages=dict(data.get("stages", {})), artifacts=dict(data.get("artifacts", {})))
    return CompiledModel(artifact, report, _Served(claims.input_names, outputs, out_spec), settings, claims=claims)


def _artifact(directory: Path, record: dict[str, Any], claims: Claims, outputs: tuple[str, ...],
              dims: tuple[DynamicDim, ...], tolerance: Tolerance) -> Artifact:
    if "buckets" in record:
        entry = record["buckets"]
        paths = {int(b): _inside(directory, name) for b, name in entry["models"].items()}
        batch = next((d for d in dims if d.name == BATCH_NAME), None)
        if batch is None:
            raise ConfigError("the bucket set's claims have no batch dim")
        server = BucketServer(dict(sorted(paths.items())), batch.sites, tuple(entry["output_batch_axes"]),
                              no_chunks=entry.get("no_chunks"))
        return BucketSet(server, claims.input_names, outputs, batch, [d for d in dims if not d.is_batch],
                         tolerance=tolerance, name="buckets")
    return OnnxModel(_inside(directory, record["model"]), claims.input_names, outputs, dims=dims, tolerance=tolerance)


def _inside(directory: Path, name: Any) -> Path:
    """``directory / name`` for a plain file name whose ONNX external data stays inside ``directory``."""
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise ConfigError(f"the report names {name!r} as a model file; only plain file names inside the directory "
                          "are opened")
    path = directory / name
    if not path.is_file() or path.resolve().parent != directory:
        raise ConfigError(f"{path} is missing or leads outside {directory}")
    model = onnx.load(str(path), load_external_data=False)
    for tensor in _tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (directory / location).resolve()
        if target.parent != directory and directory not in target.parents:
            raise ConfigError(f"{name}: tensor {tensor.name!r} keeps its data at {location!r}, outside {directory}",
                              hint="an ONNX file fxtrt loads keeps its external data beside it")
    return path


def _tensors(graph: onnx.GraphProto):
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                yield from _tensors(sub)


__all__ = ["SERVING", "load", "serving_record"]
