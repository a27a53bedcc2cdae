"""The exporters under comparison, as a small registry of callables.

Each exporter is ``export(model, example_inputs, spec, path) -> ExportResult``
and writes one ONNX file whose batch dimension (and, for the ``dyn`` family,
other named dims) is meant to be dynamic.  The two baselines follow the
seed's recipe to the letter (torchpipe's ``onnx_export``), differing only in
``dynamo=``:

    torch.onnx.export(model, x, path, opset_version=17, do_constant_folding=True,
                      input_names=[...], output_names=[...], dynamic_axes={...})
    model = onnx.shape_inference.infer_shapes(onnx.load(path))
    model, _ = onnxsim.simplify(model, check_n=0)
    onnx.save(model, path)

The recipe's ``dynamic_axes`` name every dynamic dim (``batch_size``, plus
``size``, ``seq``, ... for the ``dyn`` family); they carry no ranges, which
is all the recipe can say (``dynamo=True`` turns each name into
``torch.export.Dim.DYNAMIC``).  fxtrt gets the same dims with their ranges,
since its ``dynamic=`` argument requires them.

fxtrt is timed with ``verify=False``: the baselines do not verify either, and
the harness runs the same independent eager comparison on every exporter's
output.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from benchmarks.model_spec import DynamicDim

BATCH_AXIS = "batch_size"


@dataclass(frozen=True)
class ExportSpec:
    """What an exporter is told about the model, besides the model and its batch-1 example.

    ``input_names`` are the seed-recipe names (``"input"`` for a lone input,
    otherwise the forward's argument names).  Batch dims are per input and
    per output; ``None`` means that tensor has no batch dim.
    """

    input_names: tuple[str, ...]
    batch_dims: tuple[int | None, ...]
    output_batch_dims: tuple[int | None, ...]
    opset: int = 17
    batch_profile: tuple[int, int, int] = (1, 8, 32)
    dynamic: Mapping[int, Mapping[int, DynamicDim]] = field(default_factory=dict, hash=False)
    output_dynamic: tuple[Mapping[int, str], ...] = ()

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(f"output_{i}" for i in range(len(self.output_batch_dims)))

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """The seed's ``dynamic_axes``: ``"batch_size"`` on every tensor that has a batch, plus the named dims.

        ``dynamic`` names input dims; ``output_dynamic`` names the output dims
        that change with them (found from eager outputs at several sizes).
        """
        axes: dict[str, dict[int, str]] = {}
        for i, (name, dim) in enumerate(zip(self.input_names, self.batch_dims)):
            axes[name] = ({} if dim is None else {dim: BATCH_AXIS}) | {
                d: dyn.name for d, dyn in sorted(self.dynamic.get(i, {}).items())}
        for j, (name, dim) in enumerate(zip(self.output_names, self.output_batch_dims)):
            named = self.output_dynamic[j] if j < len(self.output_dynamic) else {}
            axes[name] = ({} if dim is None else {dim: BATCH_AXIS}) | dict(sorted(named.items()))
        return {name: dims for name, dims in axes.items() if dims}

    def fxtrt_dynamic(self) -> dict[int, dict[int, tuple[Any, ...]]] | None:
        """fxtrt's ``dynamic=``: ``{input: {dim: (name, min, opt, max[, step])}}``, None for batch-only."""
        out = {i: {d: (dyn.name, *dyn.range) for d, dyn in per_dim.items()} for i, per_dim in self.dynamic.items()}
        return out or None


@dataclass(frozen=True)
class ExportResult:
    """Where the ONNX file is, and how its inputs map to the example inputs.

    ``input_names[i]`` is the ONNX name of example input ``i``; ``None`` means
    the ONNX inputs are positional (the i-th graph input is example input i).
    """

    onnx_path: Path
    input_names: tuple[str, ...] | None = None
    served_by: Path | None = None  # a bucket set: the directory fxtrt serves it from (``fxtrt.load``)


ExportFn = Callable[[torch.nn.Module, tuple[torch.Tensor, ...], ExportSpec, Path], ExportResult]


@dataclass(frozen=True)
class Exporter:
    """A registry entry.

    ``refusals`` returns the exception types that count as a deliberate,
    clear refusal (REFUSED) rather than a crash; it is a callable so that an
    exporter's package is imported only in the process that uses it.
    """

    name: str
    label: str
    export: ExportFn
    refusals: Callable[[], tuple[type[BaseException], ...]]


def export_fxtrt(
    model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], spec: ExportSpec, path: Path
) -> ExportResult:
    """``fxtrt.compile`` with the same dynamic dims the baselines get, without its own verification."""
    import fxtrt

    compiled = fxtrt.compile(
        model,
        example_inputs,
        batch=spec.batch_profile,
        batch_dims=list(spec.batch_dims),
        dynamic=spec.fxtrt_dynamic(),
        out_dir=path.parent,
        opset=spec.opset,
        verify=False,
    )
    # a static-batch bucket set is judged as fxtrt serves it (benchmarks.ort_runner.ServedSession)
    served_by = Path(compiled.onnx_path).parent if compiled.buckets else None
    return ExportResult(onnx_path=Path(compiled.onnx_path), input_names=_forward_arg_names(model, len(example_inputs)),
                        served_by=served_by)


def _forward_arg_names(model: torch.nn.Module, n_inputs: int) -> tuple[str, ...] | None:
    """fxtrt names ONNX inputs after ``forward``'s arguments; ``None`` falls back to position."""
    params = [
        p.name
        for p in inspect.signature(model.forward).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return tuple(params[:n_inputs]) if len(params) >= n_inputs else None


def _fxtrt_refusals() -> tuple[type[BaseException], ...]:
    try:
        import fxtrt
    except Exception:  # noqa: BLE001 - an unimportable fxtrt has no refusals; its export crashes
        return ()
    error = getattr(fxtrt, "FxtrtError", None)
    return (error,) if isinstance(error, type) else ()


def _seed_recipe(
    model: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    spec: ExportSpec,
    path: Path,
    *,
    dynamo: bool,
) -> ExportResult:
    import onnx
    import onnxsim

    raw = path.with_name(path.stem + ".raw.onnx")
    with _recipe_step("torch.onnx.export"):
        torch.onnx.export(
            model,
            tuple(example_inputs),
            str(raw),
            opset_version=spec.opset,
            do_constant_folding=True,
            input_names=list(spec.input_names),
            output_names=list(spec.output_names),
            dynamic_axes=spec.dynamic_axes(),
            dynamo=dynamo,
        )
    with _recipe_step("onnx.shape_inference.infer_shapes"):
        onnx_model = onnx.shape_inference.infer_shapes(onnx.load(str(raw)))
    with _recipe_step("onnxsim.simplify"):
        simplified, _ = onnxsim.simplify(onnx_model, check_n=0)
    with _recipe_step("onnx.save"):
        onnx.save(simplified, str(path))
    return ExportResult(onnx_path=path, input_names=spec.input_names)


@contextlib.contextmanager
def _recipe_step(step: str) -> Iterator[None]:
    """Note on any exception which step of the recipe raised it (the type is kept, for classification)."""
    try:
        yield
    except Exception as exc:
        exc.add_note(f"in recipe step {step}")
        raise


def export_onnx_dynamo(
    model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], spec: ExportSpec, path: Path
) -> ExportResult:
    """The seed's recipe with today's default exporter (``dynamo=True``)."""
    return _seed_recipe(model, example_inputs, spec, path, dynamo=True)


def export_onnx_legacy(
    model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], spec: ExportSpec, path: Path
) -> ExportResult:
    """The seed's recipe with the TorchScript-based exporter (``dynamo=False``): torchpipe's ``onnx_export``."""
    return _seed_recipe(model, example_inputs, spec, path, dynamo=False)


def _torch_onnx_refusals() -> tuple[type[BaseException], ...]:
    """Only "operator X is not supported at opset N" counts as a clear refusal from torch.onnx."""
    return (torch.onnx.errors.UnsupportedOperatorError,)


EXPORTERS: Mapping[str, Exporter] = MappingProxyType(
    {
        "fxtrt": Exporter("fxtrt", "fxtrt.compile (verify=False)", export_fxtrt, _fxtrt_refusals),
        "onnx_dynamo": Exporter(
            "onnx_dynamo", "seed recipe, torch.onnx.export(dynamo=True) + onnxsim", export_onnx_dynamo, _torch_onnx_refusals
        ),
        "onnx_legacy": Exporter(
            "onnx_legacy",
            "seed recipe, torch.onnx.export(dynamo=False) + onnxsim (torchpipe onnx_export)",
            export_onnx_legacy,
            _torch_onnx_refusals,
        ),
    }
)


def select_exporters(names: Sequence[str] | None = None) -> tuple[Exporter, ...]:
    """Registry entries by name, in registry order when ``names`` is None."""
    if not names:
        return tuple(EXPORTERS.values())
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown:
        raise KeyError(f"unknown exporter(s) {unknown}; known: {sorted(EXPORTERS)}")
    return tuple(EXPORTERS[n] for n in names)
