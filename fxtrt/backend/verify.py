"""One verification stage for every artifact: its runners against the original model with
Polygraphy's ``Comparator``, at every size it claims.

Polygraphy's ``PytRunner`` hard-codes CUDA, so ``TorchRunner`` runs the original module on the
CPU behind the same runner interface. :class:`ReferenceRunner` is the one reference of a
compile: it makes the feeds at any sizes and runs the model once per feed, so the fp32 model,
the fp16 model and the engines are all compared with the same reference outputs.
:func:`verify` drives any :class:`~fxtrt.artifacts.Artifact` (an ONNX model, a bucket set, an
fp16 model, TensorRT engines) the same way. The check is elementwise
``|a - b| <= atol + rtol * |ref|`` (Polygraphy's own "simple" check passes an element when
*either* tolerance holds, which is looser), and any failure is an error, never a warning.

Example::

    reference = ReferenceRunner(model, example, settings.dims, input_names, output_names)
    rows = verify(artifact, reference, artifact.points, Tolerance(1e-4, 1e-3))
    raise_on_failure(rows, 1e-4, 1e-3)
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import onnx
import torch
import torch.utils._pytree as pytree
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata
from polygraphy.logger import G_LOGGER

from fxtrt.errors import FxtrtError, VerificationError
from fxtrt.frontend.export import describe_failure
from fxtrt.frontend.inputs import grid_sizes, inputs_at, verification_sizes
from fxtrt.frontend.source import onnx_node_source
from fxtrt.settings import DynamicDim

if TYPE_CHECKING:  # the artifacts build on this module; it only calls their interface
    from fxtrt.artifacts.base import Artifact

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tolerance:
    """``|a - b| <= atol + rtol * |ref|``, and the note its rows carry ("fp16 (atol=0.01, rtol=0.01)")."""

    atol: float
    rtol: float
    note: str = ""
    roundoff: bool = True  # a failing output gets the float64 rule (roundoff_verdict); not for fp16


@dataclass(frozen=True)
class VerifyRow:
    """One output at one set of sizes."""

    sizes: dict[str, int]
    output: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    passed: bool
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"sizes": dict(self.sizes), "output": self.output, "shape": list(self.shape),
                "max_abs": self.max_abs, "max_rel": self.max_rel, "passed": self.passed, "note": self.note}


class TorchRunner(BaseRunner):
    """Runs an ``nn.Module`` eagerly on the CPU; outputs are flattened in pytree order."""

    def __init__(
        self,
        model: torch.nn.Module,
        input_names: Sequence[str],
        input_dtypes: Sequence[torch.dtype],
        output_names: Sequence[str],
        feed_meta: TensorMetadata,
        name: str = "torch",
    ) -> None:
        super().__init__(name=name, prefix="torch-runner")
        self.model = model
        self.input_names = list(input_names)
        self.input_dtypes = list(input_dtypes)
        self.output_names = list(output_names)
        self._meta = feed_meta
        self._was_training = False

    def activate_impl(self) -> None:
        self._was_training = self.model.training
        self.model.eval()

    def deactivate_impl(self) -> None:
        self.model.train(self._was_training)

    def get_input_metadata_impl(self) -> TensorMetadata:
        return self._meta

    def infer_impl(self, feed_dict):
        start = time.perf_counter()
        args = [torch.from_numpy(np.ascontiguousarray(feed_dict[n])).to(dt)
                for n, dt in zip(self.input_names, self.input_dtypes)]
        try:
            with torch.no_grad():
                out = self.model(*args)
        except FxtrtError:
            raise
        except Exception as exc:  # the user's model, at a size of the declared ranges
            message, source = describe_failure(exc)
            shapes = ", ".join(f"{n} {tuple(a.shape)}" for n, a in zip(self.input_names, args))
            raise VerificationError(
                f"the original model fails eagerly at input shapes {shapes}, so it cannot be checked there: "
                f"{type(exc).__name__}: {message}", source=source,
                hint="the model must run at every size of the declared ranges: narrow them (min/max), or give the "
                     "dim a step that skips the sizes where it fails") from exc
        leaves = pytree.tree_leaves(out)
        if len(leaves) != len(self.output_names):
            raise VerificationError(
                f"the model returned {len(leaves)} tensors but the artifact has {len(self.output_names)} outputs"
            )
        outputs = OrderedDict(
            (n, t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t))
            for n, t in zip(self.output_names, leaves)
        )
        self.inference_time = time.perf_counter() - start
        return outputs


def compare_arrays(ref: np.ndarray, out: np.ndarray, atol: float, rtol: float) -> tuple[float, float, bool, str]:
    """(max |a-b|, max |a-b|/|ref|, passed, note) under ``|a-b| <= atol + rtol*|ref|``."""
    if tuple(ref.shape) != tuple(out.shape):
        return float("inf"), float("inf"), False, f"shape {tuple(out.shape)} != expected {tuple(ref.shape)}"
    if ref.size == 0:
        return 0.0, 0.0, True, ""
    a = ref.astype(np.float64)
    b = out.astype(np.float64)
    both_nan = np.isnan(a) & np.isnan(b)
    same_inf = np.isinf(a) & (a == b)
    diff = np.where(both_nan | same_inf, 0.0, np.abs(a - b))
    diff = np.where(np.isnan(diff), np.inf, diff)
    ok = diff <= atol + rtol * np.where(np.isfinite(a), np.abs(a), 0.0)
    rel = diff / np.maximum(np.abs(np.where(np.isfinite(a), a, 0.0)), np.finfo(np.float64).tiny)
    return float(diff.max()), float(rel.max()), bool(ok.all()), ""


ROUNDOFF_FACTOR = 2.0  # "about as close": at most this many times eager float32's own distance


def roundoff_verdict(ref: np.ndarray, out: np.ndarray, ref64: np.ndarray, atol: float) -> tuple[bool, str]:
    """The second rule, for outputs that fail the per-element one: float32 round-off, not a
    wrong export, when the artifact is about as close to the model computed in float64 as eager
    float32 is (``max|a - f64| <= 2 * max|eager - f64| + atol``). A model whose float32 results
    are ill-conditioned (saturated softmax over large logits) then passes; a real error of the
    same size in a well-conditioned model does not."""
    if ref.shape != out.shape or ref.shape != ref64.shape or ref.size == 0:
        return False, ""
    r64 = ref64.astype(np.float64)
    eager = float(np.nanmax(np.abs(ref.astype(np.float64) - r64)))
    artifact = float(np.nanmax(np.abs(out.astype(np.float64) - r64)))
    ok = bool(np.isfinite(artifact)) and artifact <= ROUNDOFF_FACTOR * eager + atol
    return ok, (f"float64 rule: max|artifact - f64| = {artifact:.3g}, max|eager f32 - f64| = {eager:.3g}, "
                f"{'within' if ok else 'above'} {ROUNDOFF_FACTOR:g}x + atol")


def run_comparison(
    runners: Sequence[BaseRunner],
    feeds: Sequence[tuple[dict[str, int], dict[str, np.ndarray]]],
    atol: float,
    rtol: float,
    files: Sequence[Path] = (),
    float64: Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray] | None] | None = None,
) -> list[VerifyRow]:
    """Run every runner on every feed with Polygraphy's Comparator; compare each to the first.
    A runner that raises is a VerificationError (see :func:`runtime_failures`; ``files``: the
    ONNX files run, for the failing node's line). ``float64``: the model's outputs at a feed
    computed in float64, for :func:`roundoff_verdict` on outputs that fail the per-element rule."""
    from polygraphy.comparator import Comparator

    rows: list[VerifyRow] = []
    with G_LOGGER.verbosity(G_LOGGER.CRITICAL):
        stream = iter(Comparator.run(list(runners), data_loader=[f for _, f in feeds], streaming=True))
        for sizes, feed in feeds:
            with runtime_failures(sizes, files):
                results = next(stream)
            ref_name, ref_iters = results[0]
            ref = ref_iters[0]
            for other_name, other_iters in list(results)[1:]:
                other = other_iters[0]
                for name in ref.keys():
                    r = np.asarray(ref[name])
                    if name not in other:
                        rows.append(VerifyRow(sizes, name, tuple(r.shape), float("inf"), float("inf"), False,
                                              f"{other_name} has no output {name!r}"))
                        continue
                    max_abs, max_rel, ok, note = compare_arrays(r, np.asarray(other[name]), atol, rtol)
                    if not ok and not note and float64 is not None:
                        ref64 = float64(feed)
                        if ref64 is not None and name in ref64:
                            ok, note = roundoff_verdict(r, np.asarray(other[name]), np.asarray(ref64[name]), atol)
                    label = "" if len(runners) == 2 else f"{other_name} vs {ref_name}"
                    rows.append(VerifyRow(sizes, name, tuple(r.shape), max_abs, max_rel, ok,
                                          "; ".join(x for x in (label, note) if x)))
    return rows


_STAGING_DIR = re.compile(r"[^\s'\"]*\.fxtrt-staging-[^/\\\s]*[/\\]")
_ORT_NODE = re.compile(r"Name:\s*'([^']+)'|[Nn]ode \(([^)]+)\)")  # run: Name:'n'; load: Node (n), in node (n)


def without_staging(text: str) -> str:
    """``text`` with compile's temporary directory cut from the paths in it (``model.onnx``)."""
    return _STAGING_DIR.sub("", text)


def runtime_error(exc: BaseException, what: str, files: Sequence[Path] = (),
                  error: type[FxtrtError] = VerificationError, hint: str | None = None) -> FxtrtError:
    """``exc`` from ONNX Runtime (or another runner) as an fxtrt error: its message without the
    staging path, the ONNX node it names, and that node's line in the user's model."""
    detail = without_staging(" ".join(str(exc).split()))[:1500] or type(exc).__name__
    found = _ORT_NODE.search(detail)
    node = (found.group(1) or found.group(2)) if found else None
    source = None
    for path in files if node else ():
        if path.suffix == ".onnx" and path.exists():
            graph = onnx.load(str(path), load_external_data=False).graph
            match = next((n for n in graph.node if n.name == node), None)
            if match is not None:
                source = onnx_node_source(match)
                break
    return error(f"{what}: {type(exc).__name__}: {detail}", node=node, source=source,
                 hint=hint or "the ONNX model fails in ONNX Runtime where the original runs; run with debug_dir=... "
                              "to see the graph after each pass, and please report it with the model")


@contextlib.contextmanager
def runtime_failures(sizes: Mapping[str, int], files: Sequence[Path] = ()) -> Iterator[None]:
    """A runner raising during verification at ``sizes``: a VerificationError."""
    try:
        yield
    except FxtrtError:
        raise
    except Exception as exc:  # onnxruntime, Polygraphy and TensorRT raise their own types
        where = ", ".join(f"{k}={v}" for k, v in sizes.items()) or "the example's sizes"
        raise runtime_error(exc, f"the artifact fails to run at {where} during verification", files) from exc


def format_rows(rows: Iterable[VerifyRow]) -> str:
    lines = [f"{'sizes':24} {'output':14} {'shape':20} {'max_abs':>10} {'max_rel':>10}  ok"]
    for r in rows:
        sizes = ",".join(f"{k}={v}" for k, v in r.sizes.items()) or "example"
        lines.append(f"{sizes:24} {r.output:14} {str(list(r.shape)):20} {r.max_abs:10.3g} {r.max_rel:10.3g}  "
                     f"{'yes' if r.passed else 'NO'}{'  ' + r.note if r.note else ''}")
    return "\n".join(lines)


def raise_on_failure(rows: Sequence[VerifyRow], atol: float, rtol: float, divergence: Any = None) -> None:
    """VerificationError with the table, and where the ONNX model first left the FX graph."""
    bad = [r for r in rows if not r.passed]
    if not bad:
        return
    if divergence is not None:
        where = f"\n{divergence.describe()}"
        hint = getattr(divergence, "hint", "the ONNX model diverges from the FX graph it was emitted from at that node")
    else:
        # ONNX == FX graph and ONNX != model: the FX graph itself differs from the model there.
        where = ("\nno ONNX value differs from the FX graph it was emitted from, so that graph already differs "
                 "from the model at these sizes (the capture or a pass changed it)")
        hint = ("run with debug_dir=... to compare the graph with the model after capture and after each pass, "
                "or relax atol/rtol if the error is rounding")
    raise VerificationError(
        f"the ONNX model does not match the original at {len(bad)} of {len(rows)} (size, output) checks "
        f"(|a-b| <= {atol:g} + {rtol:g}*|ref|):\n{format_rows(rows)}{where}",
        rows=list(rows),
        node=getattr(divergence, "onnx_node", None),
        source=getattr(divergence, "source", None),
        hint=hint,
    )


def ort_meta(onnx_path: Path) -> TensorMetadata:
    """Input metadata for the torch runner: the ONNX inputs' names, dtypes and shapes."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    meta = TensorMetadata()
    for vi in model.graph.input:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        shape = [d.dim_param or d.dim_value or None for d in vi.type.tensor_type.shape.dim]
        meta.add(vi.name, dtype=dtype, shape=shape)
    return meta


def verification_points(dims: Sequence[DynamicDim], traced_low: Mapping[str, int] | None = None,
                        extra: Sequence[Mapping[str, int]] = ()) -> list[dict[str, int]]:
    """The first dim (the batch) at min/opt/odd/max with the others at opt; each other dim at
    min, one size in between and max (at the first dim's extremes), all on the dims' grids.

    ``traced_low``: where torch.export traced a dim only from above its min (its 0/1 rule), a
    size in that gap is checked too. ``extra``: more sizes (the others at opt), such as where a
    fact torch assumed fails.
    """
    if not dims:
        return [{}]
    opt = {d.name: d.opt for d in dims}
    first, rest = dims[0], dims[1:]
    points = [{**opt, first.name: s} for s in verification_sizes(first)]
    for d in rest:
        mid = [s for s in verification_sizes(d) if s not in (d.min, d.max, d.opt)]
        for s in sorted({d.min, d.max}):
            for f in sorted({first.min, first.max}):
                points.append({**opt, d.name: s, first.name: f})
        for s in mid:
            points.append({**opt, d.name: s, first.name: first.opt})
    for d in dims:
        low = (traced_low or {}).get(d.name, d.min)
        gap = [s for s in grid_sizes(d, d.min + 1) if s < low]
        if gap:
            points.append({**opt, d.name: gap[len(gap) // 2]})
    points += [{**opt, **p} for p in extra]
    unique: list[dict[str, int]] = []
    for p in points:
        if p not in unique:
            unique.append(p)
    return unique


Feeds = list[tuple[dict[str, int], dict[str, np.ndarray]]]


def feeds_at(
    inputs: Sequence[torch.Tensor], dims: Sequence[DynamicDim], names: Sequence[str], points: Sequence[dict[str, int]]
) -> Feeds:
    """The example resized to each point, as ONNX feeds (float64 inputs become float32)."""
    out = []
    for sizes in points:
        tensors = inputs_at(inputs, dims, sizes)
        out.append((sizes, {n: (t.to(torch.float32) if t.dtype == torch.float64 else t).numpy()
                            for n, t in zip(names, tensors)}))
    return out


class ReferenceRunner(TorchRunner):
    """The original model as the one reference of a compile.

    It makes the feeds at any sizes (:meth:`feeds`: the example tiled to them) and runs the
    model once per feed: outputs are kept by the feed's bytes, so the fp32 verification, the fp16
    repair and verification and the engine verification all reuse them. Its input metadata is
    the feeds' own types with every dim dynamic, so ``Comparator`` hands it every feed unchanged.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        example: Sequence[torch.Tensor],
        dims: Sequence[DynamicDim],
        input_names: Sequence[str],
        output_names: Sequence[str],
        name: str = "torch",
    ) -> None:
        meta = TensorMetadata()
        for n, t in zip(input_names, example):
            dtype = np.float32 if t.dtype == torch.float64 else torch.empty((), dtype=t.dtype).numpy().dtype
            meta.add(n, dtype=dtype, shape=[None] * t.dim())
        super().__init__(model, input_names, [t.dtype for t in example], output_names, meta, name=name)
        self.example = tuple(example)
        self.dims = tuple(dims)
        self.runs = 0  # eager forward passes actually made
        self._outputs: dict[bytes, OrderedDict] = {}
        self._outputs64: dict[bytes, dict[str, np.ndarray] | None] = {}
        self._model64: torch.nn.Module | None = None

    def feeds(self, points: Sequence[Mapping[str, int]]) -> Feeds:
        """The example resized to each point, as ONNX feeds."""
        return feeds_at(self.example, self.dims, self.input_names, [dict(p) for p in points])

    def outputs(self, feeds: Feeds) -> list[dict[str, np.ndarray]]:
        """The model's outputs at ``feeds`` (the reference the fp16 repair works towards)."""
        with self:
            return [dict(self.infer(feed)) for _, feed in feeds]

    def float64_outputs(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """The model's outputs at ``feed`` computed in float64 (a float64 copy of the model, made
        on first use), or None where the model does not run in float64."""
        key = _digest(feed, self.input_names)
        if key not in self._outputs64:
            self._outputs64[key] = None
            try:
                if self._model64 is None:
                    self._model64 = copy.deepcopy(self.model).double().eval()
                args = [torch.from_numpy(np.ascontiguousarray(feed[n])).to(dt) for n, dt in
                        zip(self.input_names, self.input_dtypes)]
                args = [a.double() if a.is_floating_point() else a for a in args]
                with torch.no_grad():
                    leaves = pytree.tree_leaves(self._model64(*args))
                if len(leaves) == len(self.output_names):
                    self._outputs64[key] = {n: t.detach().numpy() for n, t in zip(self.output_names, leaves)
                                            if isinstance(t, torch.Tensor)}
            except Exception as exc:  # a model that builds float32 tensors itself, say: no second opinion
                log.debug("the model does not run in float64: %s", exc)
        return self._outputs64[key]

    def infer_impl(self, feed_dict):
        key = _digest(feed_dict, self.input_names)
        if key not in self._outputs:
            self._outputs[key] = super().infer_impl(feed_dict)
            self.runs += 1
        else:
            self.inference_time = 0.0
        return self._outputs[key]


def _digest(feed: Mapping[str, Any], names: Sequence[str]) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for n in names:
        arr = np.ascontiguousarray(feed[n])
        h.update(f"{n}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return h.digest()


def verify(
    artifact: "Artifact",
    reference: ReferenceRunner,
    points: Sequence[Mapping[str, int]],
    tolerance: Tolerance,
) -> list[VerifyRow]:
    """``artifact`` against the original at every point it serves: for each of its parts (an
    engine set's engines; any other artifact is one part) one ``Comparator`` over the reference
    and the part's runners, on the points the part serves.

    A row's note says the check (``tolerance.note``) and how the artifact served the sizes
    (``artifact.describe``: "served as 13->16" for a bucket set, the engine for an engine set).
    """
    rows: list[VerifyRow] = []
    for part in artifact.parts():
        mine = [dict(p) for p in points if part.serves(p)]
        if not mine:
            log.warning("no verification point falls in %s", part)
            continue
        runners = [reference, *part.verify_runners()]
        # atol = rtol = 0 asks for exact agreement: no rule for round-off then
        float64 = reference.float64_outputs if tolerance.roundoff and (tolerance.atol or tolerance.rtol) else None
        for row in run_comparison(runners, reference.feeds(mine), tolerance.atol, tolerance.rtol, part.files, float64):
            served = part.describe(row.sizes)
            if len(runners) > 2 and served:  # the row's note names the runner: "model.engine: tensorrt vs torch"
                where = f"{served}: {row.note}"
            else:
                where = "; ".join(x for x in (served, row.note) if x)
            rows.append(dataclasses.replace(row, note="; ".join(x for x in (tolerance.note, where) if x)))
    return rows
